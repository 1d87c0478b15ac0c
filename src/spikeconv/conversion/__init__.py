"""From a trained ANN to a spiking network: trace and fold (:mod:`.graph`), activation
statistics (:mod:`.calibrate`), scale and threshold rules (:mod:`.rules`), conversion-aware
activations (:mod:`.activations`), post-hoc SNN calibration (:mod:`.calibration`) and the
mapping with its ``convert`` shortcut (:mod:`.convert`). The public names are re-exported
by :mod:`spikeconv`."""
