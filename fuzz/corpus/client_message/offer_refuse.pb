P
fuzz-jobDthe job's privacy budget epsilon = 8 exceeds this partner's cap of 1