"""The partition family (lsskernels/partition/): its int8 codec, calibration and fit."""
