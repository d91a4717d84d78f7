//! shardflow-store: everything on disk, in redb.
