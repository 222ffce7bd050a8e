//! A simulated disk for redb: writes land in a volatile image, `sync_data` makes them durable,
//! and a crash throws away everything written since the last successful sync.
//!
//! A [`SimDisk`] outlives the process that uses it (device or relay). Each open hands redb a
//! [`SimBackend`] tied to the disk's current generation; [`SimDisk::crash`] bumps the
//! generation, so the dropped `Database` of the dead process cannot write anything more (its
//! clean-shutdown header write fails), and resets the volatile image to the durable one.
//!
//! A power cut can also be armed to strike at a future sync ([`SimDisk::arm_power_cut`]): that
//! sync fails, nothing after the previous sync survives, and every later operation fails
//! until the owner notices ([`SimDisk::is_dead`]) and crashes the process. That puts crashes
//! in the middle of a core call, between two of its transactions.

use redb::StorageBackend;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct Image {
    /// What the process sees.
    live: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Byte ranges of `live` written since the last sync.
    dirty: Vec<(usize, usize)>,
    generation: u64,
    syncs: u64,
    /// The sync number at which the power goes out.
    power_cut_at: Option<u64>,
    dead: bool,
}

/// A disk shared between a simulated process and the simulator.
#[derive(Clone, Debug, Default)]
pub struct SimDisk(Arc<Mutex<Image>>);

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn image(&self) -> MutexGuard<'_, Image> {
        // The simulator is single-threaded; a poisoned lock means a panic is already unwinding.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A backend for a fresh open of this disk.
    pub fn backend(&self) -> SimBackend {
        let generation = self.image().generation;
        SimBackend {
            disk: self.clone(),
            generation,
        }
    }

    /// The process died: unsynced writes are gone, old backends are cut off.
    pub fn crash(&self) {
        let mut img = self.image();
        img.generation += 1;
        img.live = img.durable.clone();
        img.dirty.clear();
        img.power_cut_at = None;
        img.dead = false;
    }

    /// The `n`-th sync from now fails and the power goes out at that moment.
    pub fn arm_power_cut(&self, n: u64) {
        let mut img = self.image();
        img.power_cut_at = Some(img.syncs + n.max(1));
    }

    /// Cancels an armed power cut that has not struck yet.
    pub fn disarm(&self) {
        self.image().power_cut_at = None;
    }

    /// Whether an armed power cut struck (the owner must crash the process).
    pub fn is_dead(&self) -> bool {
        self.image().dead
    }
}

/// The `redb::StorageBackend` of one open of a [`SimDisk`].
#[derive(Debug)]
pub struct SimBackend {
    disk: SimDisk,
    generation: u64,
}

fn gone() -> io::Error {
    io::Error::other("simulated disk: the process crashed")
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "simulated disk: out of range")
}

impl SimBackend {
    fn image(&self) -> io::Result<MutexGuard<'_, Image>> {
        let img = self.disk.image();
        if img.generation != self.generation || img.dead {
            return Err(gone());
        }
        Ok(img)
    }
}

impl StorageBackend for SimBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.image()?.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let img = self.image()?;
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let src = img
            .live
            .get(start..start + out.len())
            .ok_or_else(out_of_range)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut img = self.image()?;
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        let old = img.live.len();
        img.live.resize(len, 0);
        if len > old {
            // The new zeros must reach the durable image too (it may hold older bytes there).
            img.dirty.push((old, len - old));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut img = self.image()?;
        img.syncs += 1;
        if img.power_cut_at.is_some_and(|at| img.syncs >= at) {
            img.dead = true;
            return Err(io::Error::other("simulated power cut"));
        }
        let img = &mut *img;
        let len = img.live.len();
        img.durable.resize(len, 0);
        for (start, n) in std::mem::take(&mut img.dirty) {
            let end = (start + n).min(len);
            if start < end {
                img.durable[start..end].copy_from_slice(&img.live[start..end]);
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut img = self.image()?;
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let dst = img
            .live
            .get_mut(start..start + data.len())
            .ok_or_else(out_of_range)?;
        dst.copy_from_slice(data);
        img.dirty.push((start, data.len()));
        Ok(())
    }
}
