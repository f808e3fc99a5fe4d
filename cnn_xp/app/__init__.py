"""The application on top of the library: the ``cnn-xp`` CLI, the trainer, doctor, bench,
plots and predict. Nothing in the library (backend, ops, kernels, layers, model, optim,
init, data, checkpoint) imports from here."""
