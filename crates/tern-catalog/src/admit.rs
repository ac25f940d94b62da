//! Admission: take a unit of load on the best machine with room, waiting in the
//! service's bounded queue while every machine is at its hard limit.

use std::time::Duration;

use tern_balance::{LoadGuard, QueueError};

use crate::snapshot::{AppEntry, Pick, ServiceEntry, Snapshot};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmitError {
    #[error("app {app} has no started, healthy machine")]
    NoHealthyMachine { app: String },
    #[error("every machine of {app} is at its hard limit and {waiting} requests already wait")]
    QueueFull { app: String, waiting: usize },
    #[error("every machine of {app} stayed at its hard limit for {waited:?}")]
    QueueTimeout { app: String, waited: Duration },
    #[error("machine {machine} of {app} is not started and healthy on this node")]
    MachineUnavailable { app: String, machine: String },
}

/// Why no machine could take a connection or request.
#[derive(Debug)]
pub enum AttemptError<E> {
    /// None could be admitted (none eligible, or the queue gave up).
    Admit(AdmitError),
    /// Connecting failed on every machine tried; the last failure.
    Connect(E),
}

impl Snapshot {
    /// Chooses the best machine not in `tried`, takes a unit of its load and
    /// opens a connection to it with `open`; a failed open moves on to the next
    /// best, up to `attempts` machines tried in all (those already in `tried`
    /// count). This is the one place where connecting moves on: HTTP and raw TCP
    /// share it, whatever `open` reaches the machine through.
    pub async fn connect_best<C, E, F, Fut>(
        &self,
        app: &AppEntry,
        service: &ServiceEntry,
        tried: &mut Vec<String>,
        attempts: usize,
        queue_timeout: Duration,
        mut open: F,
    ) -> Result<(Pick, LoadGuard, C), AttemptError<E>>
    where
        F: FnMut(Pick) -> Fut,
        Fut: std::future::Future<Output = Result<C, E>>,
    {
        let mut last = None;
        while tried.len() < attempts.max(1) {
            let (pick, guard) = match self.admit(app, service, tried, queue_timeout).await {
                Ok(p) => p,
                Err(AdmitError::NoHealthyMachine { .. }) if last.is_some() => break,
                Err(e) => return Err(AttemptError::Admit(e)),
            };
            match open(pick.clone()).await {
                Ok(c) => return Ok((pick, guard, c)),
                Err(e) => {
                    tried.push(pick.machine.def.id.clone());
                    last = Some(e);
                }
            }
        }
        match last {
            Some(e) => Err(AttemptError::Connect(e)),
            None => Err(AttemptError::Admit(AdmitError::NoHealthyMachine {
                app: app.name.clone(),
            })),
        }
    }

    /// Admits one connection or request to a machine of `service` not in `tried`.
    pub async fn admit(
        &self,
        app: &AppEntry,
        service: &ServiceEntry,
        tried: &[String],
        queue_timeout: Duration,
    ) -> Result<(Pick, LoadGuard), AdmitError> {
        let untried = |p: &Pick| !tried.contains(&p.machine.def.id);
        if !self.any_eligible(app, service, tried) {
            return Err(AdmitError::NoHealthyMachine {
                app: app.name.clone(),
            });
        }
        let attempt = || async move {
            self.ranked(app, service)
                .into_iter()
                .filter(|p| untried(p))
                .find_map(|p| {
                    let guard = p.slot.load.try_acquire(p.slot.limits.hard)?;
                    Some((p, guard))
                })
        };
        service
            .queue
            .wait_for(queue_timeout, attempt)
            .await
            .map_err(|e| queue_error(app, e))
    }

    /// Admits one unit to this node's own machine `id`, which a peer chose: the
    /// hard limit is the machine's, so it holds for traffic from every edge, and a
    /// request over it waits in this node's queue.
    pub async fn admit_local(
        &self,
        app: &AppEntry,
        service: &ServiceEntry,
        id: &str,
        queue_timeout: Duration,
    ) -> Result<(Pick, LoadGuard), AdmitError> {
        let unavailable = || AdmitError::MachineUnavailable {
            app: app.name.clone(),
            machine: id.to_owned(),
        };
        let pick = self.local_pick(app, service, id).ok_or_else(unavailable)?;
        let attempt = || async {
            let guard = pick.slot.load.try_acquire(pick.slot.limits.hard)?;
            Some(guard)
        };
        let guard = service
            .queue
            .wait_for(queue_timeout, attempt)
            .await
            .map_err(|e| queue_error(app, e))?;
        Ok((pick, guard))
    }
}

fn queue_error(app: &AppEntry, e: QueueError) -> AdmitError {
    match e {
        QueueError::Full(waiting) => AdmitError::QueueFull {
            app: app.name.clone(),
            waiting,
        },
        QueueError::TimedOut(waited) => AdmitError::QueueTimeout {
            app: app.name.clone(),
            waited,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Catalog, Fleet};

    fn catalog() -> Fleet {
        let toml = r#"
[node]
id = "n"
region = "ams"
[[region]]
code = "ams"
rtt = { ord = "90ms" }
[[app]]
name = "web"
hostnames = ["web.test"]
[[app.service]]
internal_port = 7000
concurrency = { type = "requests", soft_limit = 1, hard_limit = 2 }
ports = [{ port = 80, handlers = ["http"] }]
[[machine]]
id = "near"
app = "web"
region = "ams"
ip = "127.0.0.2"
[[machine]]
id = "far"
app = "web"
region = "ord"
ip = "127.0.0.3"
[[machine]]
id = "off"
app = "web"
region = "ams"
ip = "127.0.0.4"
state = "stopped"
"#;
        Fleet::from_config(&tern_config::parse(toml, std::path::Path::new("t.toml")).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn bands_then_distance_then_the_queue() {
        let cat = catalog();
        let snap = cat.snapshot();
        let app = &snap.apps["web"];
        let svc = &app.services[0];
        let wait = Duration::from_millis(100);
        let id = |p: &Pick| p.machine.def.id.clone();

        // Under the soft limit everywhere: the near region wins; stopped never.
        let (p1, g1) = snap.admit(app, svc, &[], wait).await.unwrap();
        assert_eq!(id(&p1), "near");
        // near is now over its soft limit; far is under it, so far wins.
        let (p2, g2) = snap.admit(app, svc, &[], wait).await.unwrap();
        assert_eq!(id(&p2), "far");
        // Both over soft: nearest again, up to its hard limit.
        let (p3, _g3) = snap.admit(app, svc, &[], wait).await.unwrap();
        assert_eq!(id(&p3), "near");
        let (p4, _g4) = snap.admit(app, svc, &[], wait).await.unwrap();
        assert_eq!(id(&p4), "far");
        // Everything at the hard limit: the queue times out.
        let err = snap.admit(app, svc, &[], wait).await.unwrap_err();
        assert!(matches!(err, AdmitError::QueueTimeout { .. }), "{err}");
        // A release lets the next one in.
        drop(g1);
        let (p5, _g5) = snap.admit(app, svc, &[], wait).await.unwrap();
        assert_eq!(id(&p5), "near");
        drop(g2);
        // Excluding machines already tried.
        let tried = vec!["near".to_owned(), "far".to_owned()];
        let err = snap.admit(app, svc, &tried, wait).await.unwrap_err();
        assert!(matches!(err, AdmitError::NoHealthyMachine { .. }), "{err}");
    }

    #[tokio::test]
    async fn unhealthy_machines_are_not_eligible() {
        let cat = catalog();
        let snap = cat.snapshot();
        let app = &snap.apps["web"];
        let svc = &app.services[0];
        for m in &app.machines {
            m.live.slot(7000).unwrap().set_healthy(false);
        }
        let err = snap
            .admit(app, svc, &[], Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(err, AdmitError::NoHealthyMachine { .. }));
        let far = app.machines.iter().find(|m| m.def.id == "far").unwrap();
        far.live.slot(7000).unwrap().set_healthy(true);
        let (p, _g) = snap
            .admit(app, svc, &[], Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(p.machine.def.id, "far");
    }
}
