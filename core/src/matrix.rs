//! A compressed sparse row matrix: the one layout for model inputs.
//!
//! Marketing features are mostly one-hot, so rows are sparse (the bank data has 15 non-zeros
//! in about 50 inputs; hashed synthetic data has dozens in a million). Dense rows are stored the
//! same way; the model code then needs only two row operations.

/// Rows of `(column, value)` entries with a fixed column count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsrMatrix {
    cols: usize,
    row_start: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<f64>,
}

impl CsrMatrix {
    /// An empty matrix of `cols` columns with room for `rows` rows and `nnz` entries.
    pub fn with_capacity(cols: usize, rows: usize, nnz: usize) -> Self {
        let mut row_start = Vec::with_capacity(rows + 1);
        row_start.push(0);
        Self {
            cols,
            row_start,
            indices: Vec::with_capacity(nnz),
            values: Vec::with_capacity(nnz),
        }
    }

    /// Appends a row; entries must have column indices below `cols`.
    pub fn push_row(&mut self, entries: &[(u32, f64)]) {
        for &(j, v) in entries {
            debug_assert!((j as usize) < self.cols);
            self.indices.push(j);
            self.values.push(v);
        }
        self.row_start.push(self.indices.len());
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.row_start.len().saturating_sub(1)
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Column indices and values of row `r`.
    pub fn row(&self, r: usize) -> (&[u32], &[f64]) {
        let (a, b) = (self.row_start[r], self.row_start[r + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }

    /// `x_r · w` for a weight vector of length `cols`.
    pub fn dot_row(&self, r: usize, w: &[f64]) -> f64 {
        let (idx, val) = self.row(r);
        idx.iter().zip(val).map(|(&j, &v)| w[j as usize] * v).sum()
    }

    /// `out += alpha · x_r`.
    pub fn add_row_scaled(&self, r: usize, alpha: f64, out: &mut [f64]) {
        let (idx, val) = self.row(r);
        for (&j, &v) in idx.iter().zip(val) {
            out[j as usize] += alpha * v;
        }
    }
}

/// Inputs with their 0/1 labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    /// One row per example.
    pub x: CsrMatrix,
    /// 1.0 for positive, 0.0 for negative.
    pub y: Vec<f64>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ops() {
        let mut m = CsrMatrix::with_capacity(4, 2, 4);
        m.push_row(&[(0, 1.0), (3, 2.0)]);
        m.push_row(&[]);
        m.push_row(&[(1, -1.0)]);
        assert_eq!(m.rows(), 3);
        let w = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(m.dot_row(0, &w), 9.0);
        assert_eq!(m.dot_row(1, &w), 0.0);
        let mut g = [0.0; 4];
        m.add_row_scaled(0, 0.5, &mut g);
        m.add_row_scaled(2, 2.0, &mut g);
        assert_eq!(g, [0.5, -2.0, 0.0, 1.0]);
        assert_eq!(m.row(2), (&[1u32][..], &[-1.0][..]));
    }
}
