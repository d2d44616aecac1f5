"""Sensor models, SE(3) transforms, rigs, loaders and projection: pure numpy/OpenCV math."""
