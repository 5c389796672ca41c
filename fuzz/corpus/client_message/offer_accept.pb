
fuzz-job