"""gradguard inside training frameworks. Each integration is a module of its own, imported
only by those who use it (each needs its framework installed):

- :mod:`gradguard.integrations.lightning`: a PyTorch Lightning ``Callback``
  (``pip install 'gradguard[lightning]'``);
- :mod:`gradguard.integrations.transformers`: a Hugging Face ``TrainerCallback``, and a gradguard
  optimizer and schedule built from ``TrainingArguments``
  (``pip install 'gradguard[transformers]'``).
"""
