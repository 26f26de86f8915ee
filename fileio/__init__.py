"""Reading and writing files safely, for every layer of zerotune.

* :mod:`fileio.checkpoints`: checkpoint, weights and ``.safetensors`` files read without running code.
* :mod:`fileio.pickles`: pickles of data (CIFAR-10's batches) read by an unpickler that builds plain data only.
* :mod:`fileio.atomic`: files written to a temporary name and renamed, so a crash never leaves half a file.
* :mod:`fileio.errors`: :class:`~fileio.errors.DataError`, a file or data the user can fix, in one line.

It sits below ``datamodules`` and ``lightning_models`` and imports neither.
"""
