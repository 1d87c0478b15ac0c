"""Running a spiking network: input checks (:mod:`.inputs`), IF neurons (:mod:`.neurons`),
input coding (:mod:`.encoders`), the module (:mod:`.network`), the time-batched simulator and
its step reference (:mod:`.simulate`), the C kernels (:mod:`.kernels`, ``kernels.c``),
event-driven synapses (:mod:`.events`), fixed point (:mod:`.fixedpoint`) and runs over
several processes (:mod:`.distributed`). The public names are re-exported by
:mod:`spikeconv`."""
