//! The sender's view of one job ([`SenderJob`]): what to send next, what is in flight,
//! what is acknowledged, what to resend.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkState {
    Pending,
    InFlight,
    Acked,
}

/// The sender's view of one job: what to send next, what is in flight, what is done.
#[derive(Debug, Clone)]
pub struct SenderJob {
    pub(super) layouts: Vec<ChunkLayout>,
    pub(super) state: Vec<Vec<ChunkState>>,
    pub(super) hashes: Vec<Vec<Option<Hash32>>>,
    pub(super) queue: VecDeque<ChunkRef>,
    pub(super) attempts: HashMap<ChunkRef, u32>,
    pub(super) acked: u64,
    pub(super) acked_bytes: u64,
    pub(super) total: u64,
}

impl SenderJob {
    /// A job over these files; nothing is queued until [`Self::on_ready`].
    pub fn new(open: &OpenJob) -> Result<Self, ProtocolError> {
        let layouts = layouts(open)?;
        let state = layouts
            .iter()
            .map(|l| vec![ChunkState::Pending; l.chunk_count() as usize])
            .collect();
        let total = layouts.iter().map(ChunkLayout::chunk_count).sum();
        let hashes = layouts
            .iter()
            .map(|l| vec![None; l.chunk_count() as usize])
            .collect();
        Ok(Self {
            layouts,
            state,
            hashes,
            queue: VecDeque::new(),
            attempts: HashMap::new(),
            acked: 0,
            acked_bytes: 0,
            total,
        })
    }

    /// Layout of file `file`.
    pub fn layout(&self, file: u32) -> &ChunkLayout {
        &self.layouts[file as usize]
    }

    /// The gateway's `JobReady`: chunks it holds count as acknowledged (with the hashes it
    /// verified); every other chunk, including any in flight on a lost connection, is queued
    /// in file order.
    pub fn on_ready(&mut self, held: &[Vec<(u64, Hash32)>]) -> Result<(), ProtocolError> {
        if held.len() != self.layouts.len() {
            return Err(ProtocolError::Unexpected(format!(
                "JobReady lists {} files, the job has {}",
                held.len(),
                self.layouts.len()
            )));
        }
        self.queue.clear();
        for (f, list) in held.iter().enumerate() {
            for (i, h) in list {
                let slot = slot_index(*i)
                    .and_then(|i| self.hashes[f].get_mut(i))
                    .ok_or_else(|| {
                        ProtocolError::Unexpected(format!(
                            "JobReady lists chunk {i} of file {f}, out of range"
                        ))
                    })?;
                *slot = Some(*h);
            }
        }
        for (f, states) in self.state.iter_mut().enumerate() {
            let held: std::collections::HashSet<u64> = held[f].iter().map(|(i, _)| *i).collect();
            for (i, st) in states.iter_mut().enumerate() {
                let chunk = ChunkRef {
                    file: f as u32,
                    index: i as u64,
                };
                match (*st, held.contains(&(i as u64))) {
                    (ChunkState::Acked, _) => {}
                    (_, true) => {
                        *st = ChunkState::Acked;
                        self.acked += 1;
                        self.acked_bytes += self.layouts[f].chunk_len(i as u64);
                    }
                    (_, false) => {
                        *st = ChunkState::Pending;
                        self.queue.push_back(chunk);
                    }
                }
            }
        }
        Ok(())
    }

    /// The next chunk to send, now marked in flight.
    pub fn next_chunk(&mut self) -> Option<ChunkRef> {
        while let Some(c) = self.queue.pop_front() {
            let st = &mut self.state[c.file as usize][c.index as usize];
            if *st == ChunkState::Pending {
                *st = ChunkState::InFlight;
                return Some(c);
            }
        }
        None
    }

    pub(super) fn slot(&mut self, c: ChunkRef) -> Result<&mut ChunkState, ProtocolError> {
        self.state
            .get_mut(c.file as usize)
            .and_then(|f| f.get_mut(slot_index(c.index)?))
            .ok_or_else(|| ProtocolError::Unexpected(format!("ack for unknown {c:?}")))
    }

    /// The gateway acknowledged `c` (verified and durable). Duplicate acks are harmless.
    pub fn on_ack(&mut self, c: ChunkRef) -> Result<(), ProtocolError> {
        // The slot first: it exists only for an index within the file, so the length
        // below is computed for a real chunk (never from an arbitrary index on the wire).
        let st = self.slot(c)?;
        if *st != ChunkState::Acked {
            *st = ChunkState::Acked;
            self.acked += 1;
            self.acked_bytes += self.layouts[c.file as usize].chunk_len(c.index);
        }
        Ok(())
    }

    /// The gateway rejected `c`: queue it again (first), up to [`MAX_CHUNK_ATTEMPTS`] times.
    pub fn on_reject(&mut self, c: ChunkRef) -> Result<(), ProtocolError> {
        let st = self.slot(c)?;
        if *st == ChunkState::Acked {
            return Err(ProtocolError::Unexpected(format!(
                "reject of acknowledged {c:?}"
            )));
        }
        *st = ChunkState::Pending;
        let n = self.attempts.entry(c).or_insert(0);
        *n += 1;
        if *n >= MAX_CHUNK_ATTEMPTS {
            return Err(ProtocolError::InvalidChunk(format!(
                "chunk {} of file {} rejected {n} times",
                c.index, c.file
            )));
        }
        self.queue.push_front(c);
        Ok(())
    }

    /// Every chunk is acknowledged.
    pub fn is_complete(&self) -> bool {
        self.acked == self.total
    }

    /// Records the hash the sender computed for a chunk it read (before sending it).
    pub fn set_hash(&mut self, c: ChunkRef, hash: Hash32) {
        if let Some(slot) = self
            .hashes
            .get_mut(c.file as usize)
            .and_then(|f| f.get_mut(slot_index(c.index)?))
        {
            *slot = Some(hash);
        }
    }

    /// The BLAKE3 of every file, merged from the chunk hashes (for `FinishJob`).
    pub fn file_hashes(&self) -> Result<Vec<Hash32>, ProtocolError> {
        self.layouts
            .iter()
            .zip(&self.hashes)
            .enumerate()
            .map(|(f, (layout, hashes))| {
                let chunks: Option<Vec<Hash32>> = hashes.iter().copied().collect();
                let chunks = chunks.ok_or_else(|| {
                    ProtocolError::Unexpected(format!("file {f} has chunks with no known hash"))
                })?;
                layout
                    .file_hash(&chunks)
                    .map_err(|e| ProtocolError::InvalidJob(e.to_string()))
            })
            .collect()
    }

    /// (acknowledged chunks, acknowledged bytes, total chunks).
    pub fn progress(&self) -> (u64, u64, u64) {
        (self.acked, self.acked_bytes, self.total)
    }
}
