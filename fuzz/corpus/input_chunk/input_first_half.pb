

fuzz-jobf>ÚaCÈ³Wë²s¨¶