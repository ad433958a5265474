"""The query side's shell: OA's read routes and this project's own (history, trust,
snapshots, statistics, settings) over the views the projection runner keeps."""
