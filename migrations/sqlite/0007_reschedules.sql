-- A sensor in reschedule mode ends a poke without using a try: it gives its slot back and is
-- claimed again later as the same try. `reschedules` counts the pokes given back in the current
-- try; while it is above 0 a claim keeps the try number and the try's first started_at, from
-- which the sensor's timeout counts.
ALTER TABLE task_instances ADD COLUMN reschedules BIGINT NOT NULL DEFAULT 0;
