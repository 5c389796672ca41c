

coordinator