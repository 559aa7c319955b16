"""sam4em's napari plugin (``pip install sam4em[napari]``): Segment, Train, Evaluate and Measure dock
widgets, a reader for sam4em outputs and run folders, and Lucchi++ sample data.

napari finds it through the npe2 manifest ``napari.yaml`` beside this file. Nothing here is imported
by the library or the command line, which therefore never need Qt.
"""
