"""Tools around run directories: the batch runner, reports, mask inspection, run
export and the speed benchmark."""
