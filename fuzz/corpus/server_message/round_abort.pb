J+

fuzz-jobquorum lost in phase shares