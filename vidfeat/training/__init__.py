"""Training and evaluation of the encoder: the recipe (a TOML file, readable without torch), the
labelled clip datasets, the training loop and evaluation.
"""
