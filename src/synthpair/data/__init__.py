"""Data layer: readers, prepared dataset folders, slicing, normalisation, splits, transforms, phantoms."""
