"""Layer 1 (pure): one run.

Function definitions, the orchestration context, the journal model (inputs, commands,
journal entries), the run machine and its step machines, run and step views.
"""
