"""bizmsg: generated protobuf code (bizmsg.<service>.v1) and the shared service kit (bizmsg.kit)."""
