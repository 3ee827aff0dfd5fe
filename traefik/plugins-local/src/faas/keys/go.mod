module faas/keys

go 1.22
