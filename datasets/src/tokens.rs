//! Token ids on disk: written as a stream while tokenising, read back memory-mapped, so a corpus
//! of any size is sampled without loading it (u16 when the vocabulary fits, u32 otherwise).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use memmap2::Mmap;

use crate::DataError;

/// A read-only sequence of token ids.
pub enum Tokens {
    Wide16(Mmap),
    Wide32(Mmap),
    /// Ids held in memory (tests, small streams).
    Owned(Vec<u32>),
}

impl Tokens {
    /// Maps a file of little-endian ids `width` bytes wide.
    pub fn open(path: &Path, width: usize) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        if file.metadata().map_err(|e| DataError::io(path, e))?.len() == 0 {
            return Ok(Tokens::Owned(Vec::new()));
        }
        // Safety: cache files are written once, renamed into place, and never modified after.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        if map.len() % width != 0 {
            return Err(DataError::Corrupt(format!(
                "{} is not a whole number of {width}-byte ids",
                path.display()
            )));
        }
        match width {
            2 => Ok(Tokens::Wide16(map)),
            4 => Ok(Tokens::Wide32(map)),
            _ => Err(DataError::Corrupt(format!("{}: ids {width} bytes wide", path.display()))),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Tokens::Wide16(m) => m.len() / 2,
            Tokens::Wide32(m) => m.len() / 4,
            Tokens::Owned(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> u32 {
        match self {
            Tokens::Wide16(m) => u16::from_le_bytes([m[2 * i], m[2 * i + 1]]) as u32,
            Tokens::Wide32(m) => u32::from_le_bytes([m[4 * i], m[4 * i + 1], m[4 * i + 2], m[4 * i + 3]]),
            Tokens::Owned(v) => v[i],
        }
    }

    /// Ids `start..start + len`, copied out.
    pub fn window(&self, start: usize, len: usize) -> Vec<u32> {
        match self {
            Tokens::Owned(v) => v[start..start + len].to_vec(),
            _ => (start..start + len).map(|i| self.get(i)).collect(),
        }
    }

    pub fn to_vec(&self) -> Vec<u32> {
        self.window(0, self.len())
    }
}

impl From<Vec<u32>> for Tokens {
    fn from(v: Vec<u32>) -> Self {
        Tokens::Owned(v)
    }
}

/// Appends ids to a file as they come.
pub struct TokenWriter {
    out: BufWriter<File>,
    width: usize,
    pub count: usize,
}

impl TokenWriter {
    pub fn create(path: &Path, width: usize) -> Result<Self, DataError> {
        let file = File::create(path).map_err(|e| DataError::io(path, e))?;
        Ok(Self { out: BufWriter::with_capacity(1 << 20, file), width, count: 0 })
    }

    pub fn push(&mut self, ids: &[u32]) -> Result<(), DataError> {
        for &id in ids {
            let r = if self.width == 2 {
                self.out.write_all(&(id as u16).to_le_bytes())
            } else {
                self.out.write_all(&id.to_le_bytes())
            };
            r.map_err(|e| DataError::Corrupt(format!("cannot write tokens: {e}")))?;
        }
        self.count += ids.len();
        Ok(())
    }

    pub fn finish(mut self) -> Result<usize, DataError> {
        self.out.flush().map_err(|e| DataError::Corrupt(format!("cannot write tokens: {e}")))?;
        self.out.get_ref().sync_all().map_err(|e| DataError::Corrupt(format!("cannot write tokens: {e}")))?;
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_the_map_in_both_widths() {
        let dir = tempfile::tempdir().unwrap();
        for (width, ids) in [(2, vec![0u32, 1, 65_535, 7]), (4, vec![0u32, 70_000, 4_000_000_000, 3])] {
            let path = dir.path().join(format!("w{width}"));
            let mut w = TokenWriter::create(&path, width).unwrap();
            w.push(&ids[..2]).unwrap();
            w.push(&ids[2..]).unwrap();
            assert_eq!(w.finish().unwrap(), 4);
            let t = Tokens::open(&path, width).unwrap();
            assert_eq!(t.len(), 4);
            assert_eq!(t.to_vec(), ids);
            assert_eq!(t.window(1, 2), ids[1..3]);
        }
        std::fs::write(dir.path().join("odd"), [1u8, 2, 3]).unwrap();
        assert!(Tokens::open(&dir.path().join("odd"), 2).is_err());
    }
}
