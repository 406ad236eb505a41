"""Tests of the model layer: configs, checkpoints, hub, inference, evaluation, count, export."""
