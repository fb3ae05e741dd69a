"""napari plugin: the deconvolution dock widget and sample data.

This is the only package of deconflow that imports napari, Qt or magicgui.
Nothing is imported here: napari loads the modules named in ``napari.yaml``
when their contributions are first used.
"""
