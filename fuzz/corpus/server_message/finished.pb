R
fuzz-joball rounds done