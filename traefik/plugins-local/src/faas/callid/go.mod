module faas/callid

go 1.22
