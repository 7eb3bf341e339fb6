//! The consumer-group coordinator: membership, generations and rebalances
//! (JoinGroup, SyncGroup, Heartbeat, LeaveGroup), in memory. Committed
//! offsets are durable and live in the catalog (`Topics::commit_offsets`).
//!
//! A rebalance starts when a member joins, leaves or times out. Every known
//! member must join again (they learn of it from their heartbeat's
//! REBALANCE_IN_PROGRESS); when all have, or when the rebalance timeout
//! passes (the missing ones are dropped), the generation goes up, the first
//! member to join leads, and JoinGroup answers. The leader's SyncGroup
//! carries everyone's assignment.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

pub const NONE: i16 = 0;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const REBALANCE_IN_PROGRESS: i16 = 27;

/// Longest a rebalance waits for members to rejoin.
const MAX_REBALANCE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub client_id: String,
    pub client_host: String,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    joined: bool,
}

/// What JoinGroup answers.
#[derive(Debug, Clone, Default)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member and its metadata for the chosen protocol (leader only).
    pub members: Vec<(String, Bytes)>,
}

#[derive(Default)]
struct Group {
    state: Option<GroupState>,
    generation: i32,
    protocol_type: String,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    join_order: Vec<String>,
    rebalance_started: Option<Instant>,
    join_waiters: Vec<(String, oneshot::Sender<JoinResult>)>,
    sync_waiters: Vec<(String, oneshot::Sender<(i16, Bytes)>)>,
}

impl Group {
    fn state(&self) -> GroupState {
        self.state.unwrap_or(GroupState::Empty)
    }

    fn start_rebalance(&mut self) {
        if self.state() != GroupState::PreparingRebalance {
            self.state = Some(GroupState::PreparingRebalance);
            self.rebalance_started = Some(Instant::now());
            self.join_order.clear();
            for m in self.members.values_mut() {
                m.joined = false;
            }
            // Members waiting for a sync of the old generation must rejoin.
            for (_, tx) in self.sync_waiters.drain(..) {
                let _ = tx.send((REBALANCE_IN_PROGRESS, Bytes::new()));
            }
        }
    }

    /// Finishes the rebalance if every member has rejoined (or `force`,
    /// dropping those who have not).
    fn maybe_complete(&mut self, force: bool) {
        if self.state() != GroupState::PreparingRebalance {
            return;
        }
        if !force && self.members.values().any(|m| !m.joined) {
            return;
        }
        self.members.retain(|_, m| m.joined);
        if self.members.is_empty() {
            self.state = Some(GroupState::Empty);
            self.generation += 1;
            self.leader = None;
            self.protocol = None;
            return;
        }
        // The first protocol (in the first joiner's order) every member supports.
        let first = self
            .join_order
            .iter()
            .find_map(|id| self.members.get(id))
            .or_else(|| self.members.values().next());
        let protocol = first.and_then(|f| {
            f.protocols.iter().map(|(n, _)| n.clone()).find(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == n))
            })
        });
        self.generation += 1;
        self.protocol = protocol.clone();
        let leader = self
            .join_order
            .iter()
            .find(|id| self.members.contains_key(*id))
            .cloned()
            .or_else(|| self.members.keys().next().cloned());
        self.leader = leader.clone();
        self.state = Some(GroupState::CompletingRebalance);
        self.rebalance_started = None;
        let protocol = protocol.unwrap_or_default();
        let leader = leader.unwrap_or_default();
        let all: Vec<(String, Bytes)> = self
            .members
            .values()
            .map(|m| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (m.id.clone(), meta)
            })
            .collect();
        for m in self.members.values_mut() {
            m.last_seen = Instant::now();
            m.assignment = Bytes::new();
        }
        for (id, tx) in self.join_waiters.drain(..) {
            let _ = tx.send(JoinResult {
                error: NONE,
                generation: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol: protocol.clone(),
                leader: leader.clone(),
                members: if id == leader {
                    all.clone()
                } else {
                    Vec::new()
                },
                member_id: id,
            });
        }
    }

    fn remove_member(&mut self, id: &str) {
        if self.members.remove(id).is_some() {
            self.join_waiters.retain(|(m, _)| m != id);
            if self.members.is_empty() {
                self.state = Some(GroupState::Empty);
                self.generation += 1;
                self.leader = None;
                for (_, tx) in self.sync_waiters.drain(..) {
                    let _ = tx.send((UNKNOWN_MEMBER_ID, Bytes::new()));
                }
            } else {
                self.start_rebalance();
                self.maybe_complete(false);
            }
        }
    }
}

/// A description of a group for DescribeGroups.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<Member>,
}

/// Every group.
#[derive(Default)]
pub struct Coordinator {
    groups: Mutex<BTreeMap<String, Group>>,
    next_member: std::sync::atomic::AtomicU64,
}

/// Arguments of a JoinGroup.
pub struct Join {
    pub group: String,
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
}

impl Coordinator {
    /// Joins (or rejoins) a member; the answer comes when the rebalance completes.
    pub fn join(&self, j: Join) -> oneshot::Receiver<JoinResult> {
        let (tx, rx) = oneshot::channel();
        let mut groups = self.groups.lock();
        let g = groups.entry(j.group.clone()).or_default();
        if !g.members.is_empty()
            && !g.protocol_type.is_empty()
            && g.protocol_type != j.protocol_type
        {
            let _ = tx.send(JoinResult {
                error: INCONSISTENT_GROUP_PROTOCOL,
                ..Default::default()
            });
            return rx;
        }
        let id = if j.member_id.is_empty() {
            let n = self
                .next_member
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!(
                "{}-{n}",
                if j.client_id.is_empty() {
                    "member"
                } else {
                    &j.client_id
                }
            )
        } else if g.members.contains_key(&j.member_id) {
            j.member_id.clone()
        } else {
            let _ = tx.send(JoinResult {
                error: UNKNOWN_MEMBER_ID,
                member_id: j.member_id.clone(),
                ..Default::default()
            });
            return rx;
        };
        g.protocol_type = j.protocol_type.clone();
        // Any join starts (or joins) a rebalance: a rejoining member may
        // have lost its assignment.
        g.start_rebalance();
        g.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                client_id: j.client_id,
                client_host: j.client_host,
                protocols: j.protocols,
                assignment: Bytes::new(),
                session_timeout: j.session_timeout,
                rebalance_timeout: j.rebalance_timeout,
                last_seen: Instant::now(),
                joined: true,
            },
        );
        if !g.join_order.contains(&id) {
            g.join_order.push(id.clone());
        }
        g.join_waiters.retain(|(m, _)| *m != id);
        g.join_waiters.push((id, tx));
        g.maybe_complete(false);
        rx
    }

    /// A member's SyncGroup; the leader's carries every assignment.
    pub fn sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> oneshot::Receiver<(i16, Bytes)> {
        let (tx, rx) = oneshot::channel();
        let mut groups = self.groups.lock();
        let Some(g) = groups
            .get_mut(group)
            .filter(|g| g.members.contains_key(member))
        else {
            let _ = tx.send((UNKNOWN_MEMBER_ID, Bytes::new()));
            return rx;
        };
        if generation != g.generation {
            let _ = tx.send((ILLEGAL_GENERATION, Bytes::new()));
            return rx;
        }
        match g.state() {
            GroupState::PreparingRebalance | GroupState::Empty => {
                let _ = tx.send((REBALANCE_IN_PROGRESS, Bytes::new()));
            }
            GroupState::Stable => {
                let a = g.members[member].assignment.clone();
                let _ = tx.send((NONE, a));
            }
            GroupState::CompletingRebalance => {
                if g.leader.as_deref() == Some(member) {
                    for (m, a) in assignments {
                        if let Some(mm) = g.members.get_mut(&m) {
                            mm.assignment = a;
                        }
                    }
                    g.state = Some(GroupState::Stable);
                    let _ = tx.send((NONE, g.members[member].assignment.clone()));
                    for (m, waiter) in g.sync_waiters.drain(..) {
                        let a = g
                            .members
                            .get(&m)
                            .map(|x| x.assignment.clone())
                            .unwrap_or_default();
                        let _ = waiter.send((NONE, a));
                    }
                } else {
                    g.sync_waiters.push((member.to_string(), tx));
                }
            }
        }
        rx
    }

    pub fn heartbeat(&self, group: &str, member: &str, generation: i32) -> i16 {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return UNKNOWN_MEMBER_ID;
        };
        let Some(m) = g.members.get_mut(member) else {
            return UNKNOWN_MEMBER_ID;
        };
        m.last_seen = Instant::now();
        if g.state() == GroupState::PreparingRebalance {
            return REBALANCE_IN_PROGRESS;
        }
        if generation != g.generation {
            return ILLEGAL_GENERATION;
        }
        NONE
    }

    pub fn leave(&self, group: &str, member: &str) -> i16 {
        let mut groups = self.groups.lock();
        match groups.get_mut(group) {
            Some(g) if g.members.contains_key(member) => {
                g.remove_member(member);
                NONE
            }
            _ => UNKNOWN_MEMBER_ID,
        }
    }

    /// The group's generation, if the member belongs to it (offset commits check it).
    pub fn generation_of(&self, group: &str, member: &str) -> Option<i32> {
        let groups = self.groups.lock();
        let g = groups.get(group)?;
        g.members.contains_key(member).then_some(g.generation)
    }

    /// Drops members whose session expired and ends rebalances that waited too long.
    pub fn expire(&self) {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        for g in groups.values_mut() {
            let expired: Vec<String> = g
                .members
                .values()
                .filter(|m| {
                    // A member waiting in JoinGroup is alive.
                    let waiting = g.join_waiters.iter().any(|(id, _)| *id == m.id);
                    !waiting && now.duration_since(m.last_seen) > m.session_timeout
                })
                .map(|m| m.id.clone())
                .collect();
            for id in expired {
                tracing::info!(member = %id, "consumer group member session expired");
                g.remove_member(&id);
            }
            if let Some(started) = g.rebalance_started {
                let wait = g
                    .members
                    .values()
                    .map(|m| m.rebalance_timeout)
                    .max()
                    .unwrap_or_default()
                    .min(MAX_REBALANCE_WAIT);
                if now.duration_since(started) > wait {
                    g.maybe_complete(true);
                }
            }
        }
    }

    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        self.groups
            .lock()
            .iter()
            .map(|(n, g)| (n.clone(), g.protocol_type.clone(), g.state()))
            .collect()
    }

    pub fn describe(&self, group: &str) -> Option<GroupInfo> {
        let groups = self.groups.lock();
        let g = groups.get(group)?;
        Some(GroupInfo {
            state: g.state(),
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone().unwrap_or_default(),
            members: g.members.values().cloned().collect(),
        })
    }
}
