

fuzz-job ãÙ5ÄÂcÆïÝE,4>Šèü	 ”}A–s(@î¶&ÙÚa *@12423e0482f3e81cb1d23230664e95bb3d11b9f34f06fc199e588d4cdab6e4d4