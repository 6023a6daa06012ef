//! The API socket: a Unix listener and its clients, registered with whichever mio `Poll` drives
//! the VMM at the time (the pre-boot loop, then the device event loop). Nothing here blocks:
//! requests are read as they arrive, parsed once complete and handed to an [`ApiHandler`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mio::event::Event;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use super::http::{parse_request, Parsed, Response, MAX_BODY_BYTES, MAX_HEAD_BYTES};
use super::model::{route, ApiRequest};

/// Tokens from here on belong to the API (the listener, then one per client).
pub const API_TOKEN_BASE: usize = 1 << 20;
/// More simultaneous clients are turned away.
pub const MAX_CLIENTS: usize = 16;
/// A client that does not read its answers is dropped once this much is waiting for it.
const MAX_PENDING_OUTPUT: usize = 256 * 1024;
const LISTENER_TOKEN: Token = Token(API_TOKEN_BASE);

/// Identifies a client for a deferred answer: its slot, and which connection in that slot (a
/// slot freed by a vanished client is reused, and must not get the old client's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId {
    slot: usize,
    connection: u64,
}

/// Serves parsed requests.
pub trait ApiHandler {
    /// Answers now, or returns `None` and answers later with [`ApiServer::respond`].
    fn handle(&mut self, client: ClientId, request: ApiRequest) -> Option<Response>;
}

#[derive(Debug, thiserror::Error)]
pub enum ApiSocketError {
    #[error("the API socket path {0} already exists; remove it or choose another")]
    Exists(PathBuf),
    #[error("cannot create the API socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot register the API socket with the event loop: {0}")]
    Register(#[source] io::Error),
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// A request of this client waits for a deferred answer: read no further request.
    awaiting: bool,
    /// Close once the output is written.
    closing: bool,
    connection: u64,
}

pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    registry: Option<Registry>,
    clients: HashMap<usize, Client>,
    connections: u64,
    /// Requests served, answers with an error status (for the metrics).
    pub requests: u64,
    pub errors: u64,
}

impl ApiServer {
    /// Creates the socket at `path`, owner-only (0600) from the start.
    pub fn bind(path: &Path) -> Result<ApiServer, ApiSocketError> {
        if path.symlink_metadata().is_ok() {
            return Err(ApiSocketError::Exists(path.to_path_buf()));
        }
        let bind_err = |source| ApiSocketError::Bind {
            path: path.to_path_buf(),
            source,
        };
        // SAFETY: umask only changes this process's file-creation mask; restored right after.
        let old_mask = unsafe { libc::umask(0o177) };
        let listener = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old_mask) };
        let listener = listener.map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            listener,
            registry: None,
            clients: HashMap::new(),
            connections: 0,
            requests: 0,
            errors: 0,
        })
    }

    /// The socket file stays when Volt ends (the sandbox forbids removing files), as with
    /// Firecracker: whoever starts Volt removes it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `token` is one of the API's.
    pub fn owns(token: Token) -> bool {
        (API_TOKEN_BASE..=API_TOKEN_BASE + MAX_CLIENTS).contains(&token.0)
    }

    /// Registers the listener and every client with `registry`, leaving the previous one.
    pub fn register(&mut self, registry: &Registry) -> Result<(), ApiSocketError> {
        if let Some(old) = self.registry.take() {
            let _ = old.deregister(&mut self.listener);
            for client in self.clients.values_mut() {
                let _ = old.deregister(&mut client.stream);
            }
        }
        let registry = registry.try_clone().map_err(ApiSocketError::Register)?;
        registry
            .register(&mut self.listener, LISTENER_TOKEN, Interest::READABLE)
            .map_err(ApiSocketError::Register)?;
        for (&slot, client) in self.clients.iter_mut() {
            registry
                .register(
                    &mut client.stream,
                    Token(API_TOKEN_BASE + 1 + slot),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(ApiSocketError::Register)?;
        }
        self.registry = Some(registry);
        // Edge-triggered: anything that arrived while nobody watched is served now.
        Ok(())
    }

    /// Serves whatever the event on one of the API's tokens announced.
    pub fn handle_event(&mut self, event: &Event, handler: &mut dyn ApiHandler) {
        if event.token() == LISTENER_TOKEN {
            self.accept_all();
            // Clients accepted now may already have sent their request.
            let slots: Vec<usize> = self.clients.keys().copied().collect();
            for slot in slots {
                self.serve(slot, handler);
            }
            return;
        }
        let slot = event.token().0 - API_TOKEN_BASE - 1;
        self.serve(slot, handler);
    }

    /// Serves every client once: used after registering with a new loop.
    pub fn serve_all(&mut self, handler: &mut dyn ApiHandler) {
        self.accept_all();
        let slots: Vec<usize> = self.clients.keys().copied().collect();
        for slot in slots {
            self.serve(slot, handler);
        }
    }

    /// Answers a request that [`ApiHandler::handle`] deferred.
    pub fn respond(&mut self, client: ClientId, response: Response, handler: &mut dyn ApiHandler) {
        if let Some(c) = self
            .clients
            .get_mut(&client.slot)
            .filter(|c| c.connection == client.connection)
        {
            c.awaiting = false;
            c.output.extend_from_slice(&response.encode(false));
            self.count(&response);
            // Requests that queued behind the deferred one are served now.
            self.serve(client.slot, handler);
        }
    }

    fn count(&mut self, response: &Response) {
        self.requests += 1;
        if response.status >= 400 {
            self.errors += 1;
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let Some(slot) = (0..MAX_CLIENTS).find(|s| !self.clients.contains_key(s))
                    else {
                        log::warn!("API: more than {MAX_CLIENTS} clients; connection refused");
                        let reply = Response::error(503, "too many API clients").encode(true);
                        let _ = stream.write(&reply);
                        continue;
                    };
                    if let Some(registry) = &self.registry {
                        if let Err(e) = registry.register(
                            &mut stream,
                            Token(API_TOKEN_BASE + 1 + slot),
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            log::warn!("API: cannot watch a client: {e}");
                            continue;
                        }
                    }
                    self.connections += 1;
                    self.clients.insert(
                        slot,
                        Client {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                            awaiting: false,
                            closing: false,
                            connection: self.connections,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("API: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads what the client sent, answers every complete request, writes what it can.
    fn serve(&mut self, slot: usize, handler: &mut dyn ApiHandler) {
        let Some(client) = self.clients.get_mut(&slot) else {
            return;
        };
        let mut gone = read_available(client);
        let mut answers = Vec::new();
        while !client.awaiting && !client.closing {
            match parse_request(&client.input) {
                Parsed::Incomplete => {
                    if client.input.len() > MAX_HEAD_BYTES + MAX_BODY_BYTES {
                        // Cannot happen with a well-formed request: the parser caps both.
                        client.closing = true;
                    }
                    break;
                }
                Parsed::Invalid(response) => {
                    log::debug!("API: {:?}", response.fault_message());
                    answers.push(response.clone());
                    client.output.extend_from_slice(&response.encode(true));
                    client.input.clear();
                    client.closing = true;
                }
                Parsed::Refused(response, used) => {
                    client.input.drain(..used);
                    answers.push(response.clone());
                    client.output.extend_from_slice(&response.encode(false));
                }
                Parsed::Complete(request, used) => {
                    client.input.drain(..used);
                    let response = match route(&request) {
                        Ok(api_request) => {
                            let id = ClientId {
                                slot,
                                connection: client.connection,
                            };
                            handler.handle(id, api_request)
                        }
                        Err(response) => Some(response),
                    };
                    match response {
                        Some(response) => {
                            answers.push(response.clone());
                            client.output.extend_from_slice(&response.encode(false));
                        }
                        None => client.awaiting = true,
                    }
                }
            }
        }
        if client.output.len() > MAX_PENDING_OUTPUT {
            log::warn!("API: a client does not read its answers; dropping it");
            gone = true;
        }
        gone |= write_pending(client);
        let done = gone || (client.closing && client.output.is_empty());
        for answer in &answers {
            self.count(answer);
        }
        if done {
            self.drop_client(slot);
        }
    }

    fn drop_client(&mut self, slot: usize) {
        if let Some(mut client) = self.clients.remove(&slot) {
            if let Some(registry) = &self.registry {
                let _ = registry.deregister(&mut client.stream);
            }
        }
    }
}

/// Reads until the socket would block; true when the peer closed or failed. Input beyond what
/// one request may hold is not read (the parser then refuses the request).
fn read_available(client: &mut Client) -> bool {
    let mut buf = [0u8; 4096];
    let cap = MAX_HEAD_BYTES + MAX_BODY_BYTES + 1;
    loop {
        if client.input.len() >= cap || client.closing {
            return false;
        }
        match client.stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => client.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Writes pending output until done or the socket would block; true when the peer is gone.
fn write_pending(client: &mut Client) -> bool {
    while !client.output.is_empty() {
        match client.stream.write(&client.output) {
            Ok(0) => return true,
            Ok(n) => {
                client.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    false
}
