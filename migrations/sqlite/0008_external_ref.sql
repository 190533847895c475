-- What an operator started outside this machine for a try (an EMR step: cluster and step id),
-- committed before it polls, so that the try after a scheduler crash or shutdown re-attaches to
-- it instead of starting it again. Kept across a requeue; emptied by any other end and by a clear.
ALTER TABLE task_instances ADD COLUMN external_ref TEXT;
