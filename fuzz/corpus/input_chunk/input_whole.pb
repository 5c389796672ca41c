

fuzz-job f>ÚaCÈ³Wë²s¨¶|©ñ¢S­„å½Ï8ýxX *@12423e0482f3e81cb1d23230664e95bb3d11b9f34f06fc199e588d4cdab6e4d4