"""Key maps between official checkpoints and msfusion modules, one file per family."""
