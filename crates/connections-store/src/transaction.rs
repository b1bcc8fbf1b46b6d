//! A transaction whose `BEGIN` travels with its first statements.
//!
//! `Client::transaction()` waits for `BEGIN` before anything else can be
//! sent: a round trip that does nothing. Here the caller joins [`begin`]
//! with its first statements, and the server receives them back to back.
//! If the value is dropped before `commit`/`rollback` (a request cancelled
//! mid-command), the connection is taken out of the pool and closed, so the
//! server rolls back and no other request can inherit an open transaction.
//!
//! [`begin`]: PipelinedTransaction::begin

use deadpool_postgres::{GenericClient, Object};

use crate::error::StoreError;

/// A transaction on a pooled connection; see the module documentation.
pub struct PipelinedTransaction {
    client: Option<Object>,
}

impl PipelinedTransaction {
    /// Wraps a pooled connection that is not in a transaction.
    pub fn new(client: Object) -> Self {
        Self { client: Some(client) }
    }

    /// The connection, for the transaction's statements.
    pub fn client(&self) -> &Object {
        self.client.as_ref().expect("the client is present until commit or rollback")
    }

    /// Sends `BEGIN`. Join it with the first statements (polled first, so it
    /// is sent first); their results are meaningless if it fails.
    pub async fn begin(&self) -> Result<(), StoreError> {
        Ok(self.client().batch_execute("BEGIN").await?)
    }

    /// Commits and returns the connection to the pool.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        let client = self.client.take().expect("present");
        // COMMIT of a failed transaction answers ROLLBACK without an error:
        // callers commit only after every statement succeeded.
        client.batch_execute("COMMIT").await?;
        Ok(())
    }

    /// Returns the connection to the pool after the caller ended the
    /// transaction itself (a `COMMIT` or `ROLLBACK` it pipelined with its
    /// last statements, and saw succeed).
    pub fn ended(mut self) {
        drop(self.client.take());
    }

    /// Rolls back and returns the connection to the pool.
    pub async fn rollback(mut self) -> Result<(), StoreError> {
        let client = self.client.take().expect("present");
        client.batch_execute("ROLLBACK").await?;
        Ok(())
    }
}

impl Drop for PipelinedTransaction {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Detach from the pool: closing the connection rolls back.
            drop(Object::take(client));
        }
    }
}
