//! Agent audio held locally before it is sent to Twilio, cut into 20 ms frames.
//!
//! Audio is tagged with the index of the agent item it belongs to, so a frame never mixes two
//! items and the playback ledger can attribute every byte. Deltas of the same item are
//! appended to one buffer; frames are copied out of it.

use std::collections::VecDeque;

/// 20 ms of G.711 at 8 kHz.
pub const FRAME_BYTES: usize = 160;

#[derive(Debug, Default)]
struct Chunk {
    tag: usize,
    bytes: Vec<u8>,
    pos: usize,
}

/// FIFO of tagged mu-law bytes.
#[derive(Debug, Default)]
pub struct FrameQueue {
    chunks: VecDeque<Chunk>,
    held: usize,
}

impl FrameQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends audio for item `tag`.
    pub fn push(&mut self, tag: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.held += bytes.len();
        if let Some(back) = self.chunks.back_mut().filter(|c| c.tag == tag) {
            if back.pos > 4096 && back.pos * 2 > back.bytes.len() {
                back.bytes.drain(..back.pos);
                back.pos = 0;
            }
            back.bytes.extend_from_slice(bytes);
        } else {
            self.chunks.push_back(Chunk { tag, bytes: bytes.to_vec(), pos: 0 });
        }
    }

    /// Bytes held in total.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// The item whose audio is next, and how many of its bytes are held.
    pub fn front(&self) -> Option<(usize, usize)> {
        self.chunks.front().map(|c| (c.tag, c.bytes.len() - c.pos))
    }

    /// True if audio of a later item is queued behind the front one.
    pub fn has_later(&self) -> bool {
        self.chunks.len() > 1
    }

    /// Copies up to `max` bytes of the front item into `out` (cleared first); returns the tag.
    pub fn pop(&mut self, max: usize, out: &mut Vec<u8>) -> Option<usize> {
        out.clear();
        let front = self.chunks.front_mut()?;
        let n = max.min(front.bytes.len() - front.pos);
        out.extend_from_slice(&front.bytes[front.pos..front.pos + n]);
        front.pos += n;
        self.held -= n;
        let tag = front.tag;
        if front.pos == front.bytes.len() {
            self.chunks.pop_front();
        }
        Some(tag)
    }

    /// Drops everything (barge-in).
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.held = 0;
    }

    /// Drops the audio of one item.
    pub fn remove_tag(&mut self, tag: usize) {
        self.chunks.retain(|c| c.tag != tag);
        self.held = self.chunks.iter().map(|c| c.bytes.len() - c.pos).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_never_mix_items_and_keep_every_byte() {
        let mut q = FrameQueue::new();
        let a: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        q.push(0, &a[..100]);
        q.push(0, &a[100..]);
        q.push(1, &[9; 30]);
        assert_eq!(q.held_bytes(), 280);
        assert_eq!(q.front(), Some((0, 250)));
        let mut out = Vec::new();
        assert_eq!(q.pop(FRAME_BYTES, &mut out), Some(0));
        assert_eq!(out, a[..160]);
        assert_eq!(q.pop(FRAME_BYTES, &mut out), Some(0));
        assert_eq!(out, a[160..]);
        assert_eq!(q.pop(FRAME_BYTES, &mut out), Some(1));
        assert_eq!(out, vec![9; 30]);
        assert_eq!(q.pop(FRAME_BYTES, &mut out), None);
        assert_eq!(q.held_bytes(), 0);
    }

    #[test]
    fn remove_tag_and_clear() {
        let mut q = FrameQueue::new();
        q.push(0, &[1; 10]);
        q.push(1, &[2; 20]);
        q.remove_tag(0);
        assert_eq!(q.front(), Some((1, 20)));
        assert_eq!(q.held_bytes(), 20);
        q.clear();
        assert_eq!(q.front(), None);
    }
}
