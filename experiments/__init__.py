"""The experiments run on vlmkd: an application of the library, not part of the installed package.

`vlmkd experiment` (from a source checkout) runs `experiments.run`: baseline vs VLM-KD over seeds on the
embedded MNIST-LT, the class-text control, the prompt-count ablation and the positive control whose
captions state per-image attributes (`experiments.attributes`) probed by `experiments.probes`.
"""
