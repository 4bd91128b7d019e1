"""Model zoo (CIFAR ResNet/MobileNet, torchvision, user factories) and checkpoint import."""
