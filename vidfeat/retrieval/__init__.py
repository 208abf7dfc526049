"""Consumers of a finished feature file: exact search, FAISS indexes, exports for other tools,
timeline plots and the web view. Everything here reads the store; the view also reads video
frames for its thumbnails (:mod:`vidfeat.video`), and the plots draw through
:mod:`vidfeat.plotting`. Nothing here imports the pipeline, training or the CLI.
"""
