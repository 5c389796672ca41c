Z

fuzz-jobp0p1p2