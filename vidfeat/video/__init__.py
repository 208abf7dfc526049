"""Decode: video files to clips on an exact timeline.

``inputs`` finds the videos of a collection; ``remote`` lists and opens videos in object
storage or behind HTTP(S) URLs, and ``shards`` reads them inside webdataset tar shards
(video2dataset's output), both in place as seekable file objects; ``source`` is the PyAV
container and timeline source; ``decoders`` holds the other frame sources (torchcodec, NVDEC)
and the one ``open_source`` registry for all of them; ``reader`` is the
:class:`~vidfeat.video.reader.ClipReader` that samples clips from a source; ``sampling`` says which frames make a
clip; ``transforms`` turns decoded clips into model input (crops, normalisation, training
augmentation). Nothing here imports the model, the pipeline or the store.
"""
