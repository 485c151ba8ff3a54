//! An external sort for fixed-size entries: memory stays bounded whatever the window holds.
//!
//! Audit joins the table and Kafka by event id and checks order per key, which needs both sides
//! sorted. Ten million events would not fit a 200 MB budget as in-memory vectors of 32-48 byte
//! entries, so each [`Sorter`] keeps at most `capacity` entries in one vector; when it fills, the
//! vector is sorted and written as a run to an anonymous temporary file (already unlinked: the
//! system reclaims it even on `kill -9`). Reading back k-way merges the runs. A window that fits
//! in one buffer never touches the disk.
//!
//! ```text
//!  push ─> [buffer: capacity entries] ─full─> sort ─> run file 1, 2, ... (TMPDIR)
//!  finish ─> one run: the sorted buffer itself | several: merge(heads of every run) ─> ascending
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

/// An entry with a fixed binary form, ordered as it must come out.
pub trait Fixed: Ord + Copy {
    /// Bytes of the binary form.
    const SIZE: usize;
    /// Writes the binary form into `out` (exactly `SIZE` bytes).
    fn put(&self, out: &mut [u8]);
    /// Reads it back.
    fn get(bytes: &[u8]) -> Self;
}

/// Collects entries and hands them back sorted.
#[derive(Debug)]
pub struct Sorter<T> {
    buf: Vec<T>,
    capacity: usize,
    runs: Vec<File>,
    len: u64,
}

impl<T: Fixed> Sorter<T> {
    /// A sorter that keeps at most `budget_bytes / size_of::<T>()` entries in memory.
    pub fn with_budget(budget_bytes: usize) -> Self {
        let capacity = (budget_bytes / std::mem::size_of::<T>().max(1)).max(1024);
        Self {
            buf: Vec::new(),
            capacity,
            runs: Vec::new(),
            len: 0,
        }
    }

    /// Entries pushed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds one entry; may write a run to disk.
    pub fn push(&mut self, entry: T) -> io::Result<()> {
        if self.buf.len() >= self.capacity {
            self.spill()?;
        }
        if self.buf.capacity() == 0 {
            // The whole buffer at once: no doubling (which would briefly hold 1.5x the cap), and
            // the system only backs the pages actually written.
            self.buf.reserve_exact(self.capacity);
        }
        self.buf.push(entry);
        self.len += 1;
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.buf.sort_unstable();
        let mut file = tempfile::tempfile()?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, &mut file);
            let mut bytes = vec![0u8; T::SIZE];
            for e in &self.buf {
                e.put(&mut bytes);
                w.write_all(&bytes)?;
            }
            w.flush()?;
        }
        file.seek(SeekFrom::Start(0))?;
        self.runs.push(file);
        self.buf.clear();
        Ok(())
    }

    /// Number of runs written to disk so far.
    pub fn runs_on_disk(&self) -> usize {
        self.runs.len()
    }

    /// The entries, ascending, read back from disk even if they fit in memory: frees the buffer
    /// for what comes next.
    pub fn finish_on_disk(mut self) -> io::Result<Sorted<T>> {
        if self.runs.is_empty() && !self.buf.is_empty() {
            self.spill()?;
        }
        self.finish()
    }

    /// The entries, ascending.
    pub fn finish(mut self) -> io::Result<Sorted<T>> {
        if self.runs.is_empty() {
            self.buf.sort_unstable();
            return Ok(Sorted::Memory(self.buf.into_iter()));
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        drop(std::mem::take(&mut self.buf));
        let mut readers: Vec<BufReader<File>> = self
            .runs
            .into_iter()
            .map(|f| BufReader::with_capacity(256 * 1024, f))
            .collect();
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(e) = read_one::<T>(r)? {
                heap.push(Reverse((e, i)));
            }
        }
        Ok(Sorted::Merge(Merge { readers, heap }))
    }
}

fn read_one<T: Fixed>(r: &mut BufReader<File>) -> io::Result<Option<T>> {
    let mut bytes = [0u8; 64];
    let b = &mut bytes[..T::SIZE];
    match r.read_exact(b) {
        Ok(()) => Ok(Some(T::get(b))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sorted entries, from memory or merged from runs.
#[derive(Debug)]
pub enum Sorted<T> {
    /// Everything fit in one buffer.
    Memory(std::vec::IntoIter<T>),
    /// Merged from runs on disk.
    Merge(Merge<T>),
}

/// The k-way merge of runs.
#[derive(Debug)]
pub struct Merge<T> {
    readers: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<(T, usize)>>,
}

impl<T: Fixed> Iterator for Sorted<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Sorted::Memory(it) => it.next().map(Ok),
            Sorted::Merge(m) => {
                let Reverse((e, i)) = m.heap.pop()?;
                match read_one::<T>(&mut m.readers[i]) {
                    Ok(Some(next)) => m.heap.push(Reverse((next, i))),
                    Ok(None) => {}
                    Err(err) => return Some(Err(err)),
                }
                Some(Ok(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct E(u64, u32);

    impl Fixed for E {
        const SIZE: usize = 12;
        fn put(&self, out: &mut [u8]) {
            out[..8].copy_from_slice(&self.0.to_le_bytes());
            out[8..12].copy_from_slice(&self.1.to_le_bytes());
        }
        fn get(b: &[u8]) -> Self {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[..8]);
            let mut c = [0u8; 4];
            c.copy_from_slice(&b[8..12]);
            E(u64::from_le_bytes(a), u32::from_le_bytes(c))
        }
    }

    fn input(n: u64) -> Vec<E> {
        // A fixed pseudo-random order with repeats.
        (0..n)
            .map(|i| {
                E(
                    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (n / 2 + 1),
                    i as u32,
                )
            })
            .collect()
    }

    #[test]
    fn in_memory_and_spilled_runs_give_the_same_order() {
        let data = input(10_000);
        let mut want = data.clone();
        want.sort();
        for budget in [1 << 30, 0] {
            // budget 0 -> the minimum buffer (1024 entries): 10 runs on disk.
            let mut s = Sorter::<E>::with_budget(budget);
            for e in &data {
                s.push(*e).expect("push");
            }
            let spilled = s.runs_on_disk();
            assert_eq!(s.len(), 10_000);
            let got: Vec<E> = s
                .finish()
                .expect("finish")
                .collect::<io::Result<_>>()
                .expect("read");
            assert_eq!(got, want, "budget {budget}");
            assert_eq!(spilled > 0, budget == 0);
        }
        let mut s = Sorter::<E>::with_budget(1 << 30);
        for e in &data {
            s.push(*e).expect("push");
        }
        let got: Vec<E> = s
            .finish_on_disk()
            .expect("finish")
            .collect::<io::Result<_>>()
            .expect("read");
        assert_eq!(got, want, "one run on disk");
    }

    #[test]
    fn empty_is_empty() {
        let s = Sorter::<E>::with_budget(0);
        assert!(s.is_empty());
        assert_eq!(s.finish().expect("finish").count(), 0);
    }
}
