//! The exchange's compact tables: partners in a sorted vector, segments in a window indexed
//! by segment number, and what a partner holds as a sliding bitmap.

use std::collections::VecDeque;

use super::Partner;
use crate::identity::PeerId;
use crate::segment::SegmentId;

/// The partners in id order: sorted vectors (a few dozen at most, next to each other in
/// memory), searched by id. The exchange looks a partner up on every frame, so a search runs
/// over the ids' first eight bytes, as numbers in a vector of their own (24 partners' fit in
/// three cache lines, where their whole ids take twelve), and compares whole ids only where
/// those are equal. In `sim bench --peers 10000`, where each event touches another host's
/// tables, the search had been a tenth of the run, nearly all of it waiting for memory.
#[derive(Debug, Default)]
pub(super) struct PartnerMap {
    /// `id_prefix` of each id, in the same order.
    prefixes: Vec<u64>,
    ids: Vec<PeerId>,
    partners: Vec<Partner>,
}

/// An id's first eight bytes as a big-endian number: ordering by it, then by the whole id, is
/// the ids' own (lexicographic) order.
pub(super) fn id_prefix(id: &PeerId) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = id.0;
    u64::from_be_bytes([a, b, c, d, e, f, g, h])
}

impl PartnerMap {
    pub(super) fn find(&self, id: &PeerId) -> Result<usize, usize> {
        let prefix = id_prefix(id);
        let mut i = self.prefixes.partition_point(|&p| p < prefix);
        while self.prefixes.get(i) == Some(&prefix) {
            match self.ids[i].cmp(id) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Equal => return Ok(i),
                std::cmp::Ordering::Greater => break,
            }
        }
        Err(i)
    }

    pub(super) fn get(&self, id: &PeerId) -> Option<&Partner> {
        let i = self.find(id).ok()?;
        Some(&self.partners[i])
    }

    pub(super) fn get_mut(&mut self, id: &PeerId) -> Option<&mut Partner> {
        let i = self.find(id).ok()?;
        Some(&mut self.partners[i])
    }

    pub(super) fn contains_key(&self, id: &PeerId) -> bool {
        self.find(id).is_ok()
    }

    /// The partner at `index` in id order, with its id.
    pub(super) fn at_mut(&mut self, index: usize) -> (PeerId, &mut Partner) {
        (self.ids[index], &mut self.partners[index])
    }

    /// The partner at `index` in id order.
    pub(super) fn at(&self, index: usize) -> Option<&Partner> {
        self.partners.get(index)
    }

    pub(super) fn insert(&mut self, id: PeerId, partner: Partner) {
        match self.find(&id) {
            Ok(i) => self.partners[i] = partner,
            Err(i) => {
                self.prefixes.insert(i, id_prefix(&id));
                self.ids.insert(i, id);
                self.partners.insert(i, partner);
            }
        }
    }

    pub(super) fn remove(&mut self, id: &PeerId) -> Option<Partner> {
        let i = self.find(id).ok()?;
        self.prefixes.remove(i);
        self.ids.remove(i);
        Some(self.partners.remove(i))
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&PeerId, &Partner)> + '_ {
        self.ids.iter().zip(&self.partners)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &PeerId> + '_ {
        self.ids.iter()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Partner> + '_ {
        self.partners.iter()
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Partner> + '_ {
        self.partners.iter_mut()
    }

    /// All partners, starting with the first whose id is not below `id`, wrapping around.
    pub(super) fn from(&self, id: PeerId) -> impl Iterator<Item = (&PeerId, &Partner)> + '_ {
        let (Ok(i) | Err(i)) = self.find(&id);
        let (ids_before, ids_after) = self.ids.split_at(i);
        let (before, after) = self.partners.split_at(i);
        ids_after
            .iter()
            .zip(after)
            .chain(ids_before.iter().zip(before))
    }
}

/// Values per segment (statements, arrival times, bytes) in segment order: the init segment,
/// then media segments in a window that slides with them. A lookup is an index into the
/// window instead of a search through a tree: the exchange looks segments up on every frame.
#[derive(Debug)]
pub(super) struct SegmentMap<V> {
    init: Option<V>,
    /// The media segment in `media[0]`.
    first: u64,
    /// Trimmed: the first and last entries are present, unless it is empty.
    media: VecDeque<Option<V>>,
}

impl<V> Default for SegmentMap<V> {
    fn default() -> Self {
        Self {
            init: None,
            first: 0,
            media: VecDeque::new(),
        }
    }
}

impl<V> SegmentMap<V> {
    /// The most media segments between the first and the last one kept (about 12 days of
    /// one-second segments); a segment that would stretch the window further is refused.
    const MAX_SPAN: u64 = 1 << 20;

    pub(super) fn slot(&self, n: u64) -> Option<usize> {
        let index = n.checked_sub(self.first)?;
        (index < self.media.len() as u64).then_some(index as usize)
    }

    pub(super) fn get(&self, id: &SegmentId) -> Option<&V> {
        match *id {
            SegmentId::Init => self.init.as_ref(),
            SegmentId::Media(n) => self.media.get(self.slot(n)?)?.as_ref(),
        }
    }

    pub(super) fn contains_key(&self, id: &SegmentId) -> bool {
        self.get(id).is_some()
    }

    /// Inserts or replaces; false (and nothing stored) if `id` is too far from the others.
    pub(super) fn insert(&mut self, id: SegmentId, value: V) -> bool {
        let SegmentId::Media(n) = id else {
            self.init = Some(value);
            return true;
        };
        if self.media.is_empty() {
            self.first = n;
            self.media.push_back(Some(value));
            return true;
        }
        let last = self.first + self.media.len() as u64 - 1;
        if n.max(last) - n.min(self.first) >= Self::MAX_SPAN {
            return false;
        }
        if n < self.first {
            for _ in n..self.first {
                self.media.push_front(None);
            }
            self.first = n;
        } else if n > last {
            self.media
                .resize_with((n - self.first) as usize + 1, || None);
        }
        let index = (n - self.first) as usize;
        self.media[index] = Some(value);
        true
    }

    pub(super) fn remove(&mut self, id: &SegmentId) -> Option<V> {
        let n = match *id {
            SegmentId::Init => return self.init.take(),
            SegmentId::Media(n) => n,
        };
        let index = self.slot(n)?;
        let value = self.media[index].take();
        while self.media.front().is_some_and(Option::is_none) {
            self.media.pop_front();
            self.first += 1;
        }
        while self.media.back().is_some_and(Option::is_none) {
            self.media.pop_back();
        }
        value
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Present entries in segment order.
    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = (SegmentId, &V)> + '_ {
        let first = self.first;
        self.init.iter().map(|v| (SegmentId::Init, v)).chain(
            self.media
                .iter()
                .enumerate()
                .filter_map(move |(i, v)| Some((SegmentId::Media(first + i as u64), v.as_ref()?))),
        )
    }

    pub(super) fn keys(&self) -> impl DoubleEndedIterator<Item = SegmentId> + '_ {
        self.iter().map(|(id, _)| id)
    }

    pub(super) fn values(&self) -> impl DoubleEndedIterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

/// What a partner holds: a bitmap over media segment numbers (a buffer map) that slides
/// forward as old segments are forgotten, plus the init segment.
///
/// The first few words sit in the map itself (a live window spans three or four), so that
/// looking a segment up in each partner's map, as every round of requests does, follows no
/// pointer; words past those spill into a deque.
#[derive(Debug, Default)]
pub(super) struct HaveMap {
    init: bool,
    /// Word `i` covers segments `(first_word + i) * 64 ..`.
    first_word: u64,
    /// Words in the map.
    len: usize,
    /// Words `0..HAVE_INLINE`; those at `len` and beyond are zero.
    inline: [u64; HAVE_INLINE],
    /// Words `HAVE_INLINE..len`.
    spill: VecDeque<u64>,
}

/// Words of a [`HaveMap`] kept inline.
const HAVE_INLINE: usize = 4;

impl HaveMap {
    pub(super) fn word(&self, index: usize) -> Option<u64> {
        if index >= self.len {
            None
        } else if index < HAVE_INLINE {
            Some(self.inline[index])
        } else {
            self.spill.get(index - HAVE_INLINE).copied()
        }
    }

    pub(super) fn word_mut(&mut self, index: usize) -> Option<&mut u64> {
        if index >= self.len {
            None
        } else if index < HAVE_INLINE {
            Some(&mut self.inline[index])
        } else {
            self.spill.get_mut(index - HAVE_INLINE)
        }
    }

    /// Grows the map to `len` words (new ones zero).
    pub(super) fn grow(&mut self, len: usize) {
        if len > HAVE_INLINE {
            self.spill.resize(len - HAVE_INLINE, 0);
        }
        self.len = len;
    }

    /// Drops the first word.
    pub(super) fn pop_front(&mut self) {
        self.inline.copy_within(1.., 0);
        self.inline[HAVE_INLINE - 1] = self.spill.pop_front().unwrap_or(0);
        self.len -= 1;
    }

    pub(super) fn insert(&mut self, id: SegmentId) {
        let SegmentId::Media(n) = id else {
            self.init = true;
            return;
        };
        let word = n / 64;
        if word < self.first_word {
            return; // already forgotten
        }
        if self.len == 0 {
            self.first_word = word;
        }
        let index = (word - self.first_word) as usize;
        if index >= self.len {
            // A partner announcing a segment absurdly far ahead is not worth the memory.
            if index > 1 << 16 {
                return;
            }
            self.grow(index + 1);
        }
        if let Some(w) = self.word_mut(index) {
            *w |= 1 << (n % 64);
        }
    }

    pub(super) fn remove(&mut self, id: SegmentId) {
        let SegmentId::Media(n) = id else {
            self.init = false;
            return;
        };
        let Some(index) = (n / 64).checked_sub(self.first_word) else {
            return;
        };
        if let Some(word) = usize::try_from(index).ok().and_then(|i| self.word_mut(i)) {
            *word &= !(1 << (n % 64));
        }
    }

    pub(super) fn contains(&self, id: SegmentId) -> bool {
        let SegmentId::Media(n) = id else {
            return self.init;
        };
        let Some(index) = (n / 64).checked_sub(self.first_word) else {
            return false;
        };
        usize::try_from(index)
            .ok()
            .and_then(|i| self.word(i))
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    /// Forgets media segments before `seq`.
    pub(super) fn forget_before(&mut self, seq: u64) {
        while self.first_word < seq / 64 && self.len > 0 {
            self.pop_front();
            self.first_word += 1;
        }
        if self.first_word == seq / 64 {
            if let Some(word) = self.word_mut(0) {
                *word &= !((1u64 << (seq % 64)) - 1);
            }
        }
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partners_sharing_an_id_prefix_are_found_in_id_order() {
        let id = |first: u8, last: u8| {
            let mut bytes = [first; 32];
            bytes[31] = last;
            PeerId(bytes)
        };
        let now = std::time::Instant::now();
        let mut map = PartnerMap::default();
        // Three ids with the same first eight bytes, and one on each side of them.
        for (first, last) in [(5, 9), (5, 1), (9, 0), (5, 4), (1, 0)] {
            map.insert(id(first, last), Partner::new(now));
        }
        let order: Vec<PeerId> = map.keys().copied().collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "kept in id order");
        for (first, last) in [(5, 9), (5, 1), (9, 0), (5, 4), (1, 0)] {
            assert!(map.contains_key(&id(first, last)));
        }
        assert_eq!(map.find(&id(5, 2)), Err(2), "between 5…1 and 5…4");
        assert_eq!(map.find(&id(5, 10)), Err(4), "after the last 5…");
        assert!(map.remove(&id(5, 4)).is_some());
        assert!(!map.contains_key(&id(5, 4)) && map.contains_key(&id(5, 9)));
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn a_have_map_slides_forward() {
        let mut have = HaveMap::default();
        for n in [3, 64, 65, 200] {
            have.insert(SegmentId::Media(n));
        }
        have.insert(SegmentId::Init);
        assert!(have.contains(SegmentId::Media(3)) && have.contains(SegmentId::Media(200)));
        assert!(!have.contains(SegmentId::Media(4)) && !have.contains(SegmentId::Media(9_999)));
        have.remove(SegmentId::Media(64));
        assert!(!have.contains(SegmentId::Media(64)) && have.contains(SegmentId::Media(65)));
        have.forget_before(65);
        assert!(!have.contains(SegmentId::Media(3)), "forgotten");
        assert!(have.contains(SegmentId::Media(65)) && have.contains(SegmentId::Init));
        have.insert(SegmentId::Media(2)); // behind the window: ignored
        assert!(!have.contains(SegmentId::Media(2)));
        have.insert(SegmentId::Media(u64::MAX)); // absurdly far ahead: ignored, no huge allocation
        assert!(!have.contains(SegmentId::Media(u64::MAX)));
    }

    #[test]
    fn a_segment_map_keeps_segment_order_and_a_tight_window() {
        let mut map = SegmentMap::default();
        for n in [10, 12, 7] {
            assert!(map.insert(SegmentId::Media(n), n));
        }
        assert!(map.insert(SegmentId::Init, 0));
        let order: Vec<SegmentId> = map.keys().collect();
        let expected = [0, 7, 10, 12].map(|n| match n {
            0 => SegmentId::Init,
            n => SegmentId::Media(n),
        });
        assert_eq!(order, expected);
        assert_eq!(map.values().next_back(), Some(&12), "newest last");
        assert!(
            map.contains_key(&SegmentId::Media(10)) && !map.contains_key(&SegmentId::Media(11))
        );
        assert_eq!(map.remove(&SegmentId::Media(7)), Some(7));
        assert_eq!(map.first, 10, "the window starts at the first segment left");
        assert_eq!(map.remove(&SegmentId::Media(12)), Some(12));
        assert_eq!(map.media.len(), 1);
        // Absurdly far from the others: refused, no huge allocation.
        assert!(!map.insert(SegmentId::Media(u64::MAX), 1));
        assert!(!map.contains_key(&SegmentId::Media(u64::MAX)));
        map.clear();
        assert!(
            map.insert(SegmentId::Media(u64::MAX), 1),
            "alone, any number fits"
        );
    }
}
