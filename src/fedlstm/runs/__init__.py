"""Run directories: the one writer every mode uses (`rundir`), and its figures (`plots`)."""
