"""napari plugin for psr (see napari.yaml)."""
