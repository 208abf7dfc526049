"""The TimeSformer and what defines one: its config, model cards (with class lists and vidfeat's
home folder), the weight initialisations, checkpoint loading and conversion, and the runtime rules (device names, precision, the crop rule) every consumer of a
model shares. Imports nothing above :mod:`vidfeat.video`.
"""
