"""The ``responders`` console script: the one command that carries every verb of training and serving."""
