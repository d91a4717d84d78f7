//! shardflow-workflow: the durable workflow engine.
