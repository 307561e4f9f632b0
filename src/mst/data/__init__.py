"""Data: Fashion-MNIST, image folders, multi-crop augmentation."""
