module faas/unreached

go 1.22
